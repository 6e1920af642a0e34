"""The config floor: the configuration's sections and the checks that read only
them.  ``sections`` is the leaf (it imports only the wire floor), so the floors
above take sections, never the whole federation model, which lives in
``fedsa_common.federation.config``.
"""
