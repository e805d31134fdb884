"""``ue8m0 eval``: what a recipe costs a whole model (the ``eval`` extra: torch, transformers).

:mod:`.models` loads a local model offline and makes its quantized copies through
:func:`ue8m0.torch.quantize_model`; :mod:`.embedding` measures a sentence-embedding model
against its unquantized self; :mod:`.perplexity` a causal LM; :mod:`.runner` ties them together
and :mod:`.plot` draws the result.
"""
