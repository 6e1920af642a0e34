"""The process floor, the top of fedsa_common: what a command needs around its work (CLI
errors and options, credentials options, logging, child processes, crash-safe file writes).
"""
