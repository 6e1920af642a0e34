"""The federation floor: the federation model (``config``: one validated
schema that runs every floor's cross-field checks, and the config an
announcement carries) and which parameters a round shares (``split``,
``adaptive_split``).
"""
