"""The one error type of tl_neuronkinds."""


class NeuronKindsError(Exception):
    """Raised for bad input: a bad checkpoint, corpus, profile or argument.

    The message names what is wrong (a file, a line, a layer, a setting) so the user can fix it.
    """
