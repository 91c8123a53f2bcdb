"""The report's navigation (``report.py``): the filter over its neuron sections (their data
attributes, the script and its syntax stated beside the box), the contents bar, and the script
that marks separators in the contexts' widgets.

The filter reads fields, not text: ``layer:3``, ``neuron:211`` (comma lists: ``layer:2,3``),
``kind:positional`` (``token`` and ``ngram`` for the detectors), ``type:oscillatory``,
``strength:strong``, ``trigger:the`` (a trigger token or, quoted, an n-gram's tokens joined by
one space; case and the spaces around a token ignored) and bare words (a trigger, kind, type or
strength). Every term must hold; an unknown field shows no neuron and says so.
"""

import html
import json
import re

import pandas as pd

from tl_neuronkinds.present.neuron_view import SEPARATOR
from tl_neuronkinds.present.report_sections import CONTENTS

#: Filter fields (``field:value``, every term must hold): what each matches in a section's
#: data attributes; a bare word is ``trigger:``, or a kind, positional type or strength.
FILTER_FIELDS = ("layer", "neuron", "kind", "type", "strength", "trigger")
FILTER_JS = r"""(function(){var box=document.getElementById("nk-filter"),
out=document.getElementById("nk-filter-count"),
items=[].slice.call(document.querySelectorAll("section.nk-neuron"));
function low(s){return String(s).trim().toLowerCase();}
function terms(q){var re=/(?:([a-z]+):)?(?:"([^"]*)"|(\S+))/gi,m,t=[];
while((m=re.exec(q))!==null){var v=m[2]!==undefined?m[2]:m[3];
if(m[1]||low(v))t.push({f:m[1]?m[1].toLowerCase():"",v:low(v)});}return t;}
function has(el,t){var a=function(n){return low(el.getAttribute("data-"+n)||"");},
trig=JSON.parse(el.getAttribute("data-triggers")||"[]").map(low),
kind=a("kind"),ints=function(n){return t.v.split(",").indexOf(a(n))>=0;};
if(t.f==="layer")return ints("layer");if(t.f==="neuron")return ints("neuron");
if(t.f==="kind")return kind===t.v||kind===t.v+"_detector";
if(t.f==="type")return a("type")===t.v;if(t.f==="strength")return a("strength")===t.v;
if(t.f==="trigger")return trig.indexOf(t.v)>=0;
return trig.indexOf(t.v)>=0||kind===t.v||kind===t.v+"_detector"||a("type")===t.v||
a("strength")===t.v;}
function run(){var ts=terms(box.value),bad=ts.filter(function(t){
return t.f&&FIELDS.indexOf(t.f)<0;}),shown=0;
items.forEach(function(el){var ok=!bad.length&&ts.every(function(t){return has(el,t);});
el.hidden=!ok;if(ok)shown++;});
out.textContent=bad.length?"unknown field "+bad[0].f+": (use layer:, neuron:, kind:, "+
"type:, strength:, trigger:)":shown+" of "+items.length+" neurons shown";}
box.addEventListener("input",run);run();
document.querySelectorAll(".nk-toc a").forEach(function(a){a.addEventListener("click",
function(){var to=document.getElementById(a.getAttribute("href").slice(1));
if(to&&to.hidden){box.value="";run();}var d=a.closest("details");if(d)d.open=false;});});
})();""".replace("FIELDS", json.dumps(FILTER_FIELDS, separators=(",", ":")))
#: Marks the separators of the contexts' widgets once circuitsvis has drawn them (the indices
#: in ``data-nk-separators``, set by ``neuron_view``): the style and title of its separators.
SEPARATOR_JS = r"""(function(){var left=[].slice.call(
document.querySelectorAll("[data-nk-separators]"));function mark(){
left=left.filter(function(box){var spans=box.querySelectorAll(".colored-tokens>span>span");
if(!spans.length)return true;box.getAttribute("data-nk-separators").split(" ").forEach(
function(i){var s=spans[+i];if(s){s.style.outline="1px dashed #b00";s.style.color="#b00";
s.title="TITLE";}});return false;});if(!left.length)watch.disconnect();}
var watch=new MutationObserver(mark);if(left.length){
watch.observe(document.body,{childList:true,subtree:true});mark();}})();""".replace(
    "TITLE", SEPARATOR
)
FILTER_HELP = (
    '<p class="nk-filter-help">Filter: <code>layer:3</code>, <code>neuron:211</code>, '
    "<code>kind:positional</code> (or <code>token_detector</code> / <code>token</code>, "
    "<code>ngram_detector</code> / <code>ngram</code>, <code>dead</code>, <code>unknown</code>, "
    "<code>other</code>), <code>type:oscillatory</code> (<code>both_extremes</code>, "
    "<code>one_extreme</code>, <code>other</code>), <code>strength:strong</code> or "
    "<code>weak</code>, <code>trigger:the</code> (a trigger token, ignoring case and the spaces "
    'around it; <code>trigger:"the cat"</code> for an n-gram). A bare word is a trigger, a kind, '
    "a type or a strength. Terms combine: every one must hold (<code>layer:3 kind:positional"
    "</code>); <code>layer:2,3</code> is either layer.</p>"
)


def contents(body: list[str], kinds: dict[tuple[int, int], str]) -> str:
    """The table of contents: a bar that stays at the top of the window, its links (the run, the
    figures and sections found in ``body``, every neuron section by layer, with its kind as the
    link's title: ``kinds``) folded in it."""
    figures = re.findall(r'<figure id="([^"]+)"', "".join(body))
    links = [f'<a href="#{fid}">{html.escape(CONTENTS.get(fid, fid))}</a>' for fid in figures]
    extra = [
        f'<a href="#{sid}">{name}</a>'
        for sid, name in (("massive", "Massive activations"), ("universal", "Universal neurons"))
        if any(f'id="{sid}"' in part for part in body)
    ]
    by_layer: dict[int, list[str]] = {}
    for (layer, neuron), kind in kinds.items():
        by_layer.setdefault(layer, []).append(
            f'<a href="#n-{layer}-{neuron}" title="{html.escape(kind)}">N{neuron}</a>'
        )
    neurons = "".join(f"<p>L{layer}: {' '.join(a)}</p>" for layer, a in by_layer.items())
    return (
        '<nav class="nk-toc" aria-label="contents"><details><summary>Contents</summary>'
        '<div class="nk-toc-body"><p><a href="#top">Top</a><a href="#run">The run</a>'
        f'<a href="#layers">Per-layer summary</a></p><p><b>Figures</b>: {" ".join(links)}</p>'
        + (f"<p>{' '.join(extra)}</p>" if extra else "")
        + f'<p><b><a href="#neurons">Neurons</a></b> ({len(kinds)}, with the filter):</p>'
        f"{neurons}</div></details> "
        '<a href="#top">top</a><a href="#fig1a">figures</a><a href="#neurons">neurons</a></nav>'
    )


def attributes(row: pd.Series, triggers: pd.DataFrame) -> str:
    """The filter's data attributes of a neuron section (``FILTER_FIELDS``): its layer, neuron,
    kind, positional type and strength, and in ``data-triggers`` (JSON) each token of its
    triggers and each n-gram trigger's tokens joined by one space, without the spaces around."""
    from tl_neuronkinds.present.render import visible

    words: set[str] = set()
    for tokens in triggers["tokens"]:
        stripped = [visible(t, breaks=False).strip() for t in tokens]
        words.update(t for t in stripped if t)
        words.add(" ".join(t for t in stripped if t))
    positional = not pd.isna(row["pos_type"])
    values = {
        "layer": str(row["layer"]),
        "neuron": str(row["neuron"]),
        "kind": str(row["kind"]),
        "type": str(row["pos_type"]) if positional else "",
        "strength": str(row["pos_strength"]) if positional else "",
        "triggers": json.dumps(sorted(words - {""}), ensure_ascii=False),
    }
    return " ".join(f'data-{k}="{html.escape(v, quote=True)}"' for k, v in values.items())
