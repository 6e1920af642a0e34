"""The wire floor, the lowest: what travels between processes, as bytes.

Errors for hostile input (``WireError``) and for users (``UserError``), names, the one
``Tensors`` alias, the envelope, chunking, the protocol headers (the federation config
travels in them as a dict), the delta codecs, downlink deltas and hub status.  Imports
nothing of fedsa_common above it (pyproject.toml, contract fedsa-common-floors).
"""
