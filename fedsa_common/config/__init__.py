"""The config floor: the configuration's sections and the checks that read only them.

``sections`` is the leaf (it imports only the wire floor), so the privacy floor above reads
sections without the federation model (``fedsa_common.federation.config``), which sits
higher because it runs privacy's checks too.
"""
