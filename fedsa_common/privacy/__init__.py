"""The privacy floor: differential privacy (``dp``, ``dp_adaptive``) and secure aggregation
(``secagg``), pure math with no I/O.  They take configuration sections
(``fedsa_common.config.sections``), never the federation model; their cross-field checks
(``dp.config_conflicts``, ``secagg.config_check``) are run by the federation floor above.
"""
