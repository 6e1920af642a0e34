"""The federation floor: the federation model (``config``: one validated schema that runs
every floor's cross-field checks, and the config an announcement carries) and which
parameters a round shares (``split``, ``adaptive_split``).

Above privacy and not in the config floor: ``FederationConfig`` runs the differential-privacy
and secure-aggregation checks, which need their floor's math (noise calibration, the
fixed-point range).  Beside the net floor, never importing it.
"""
