"""Training the embedded models: tokenizer, tiny OPT, the training loop and its settings.

The command line is :mod:`tl_neuronkinds.training`.
"""
