"""The run store: the one contract between measuring and reporting.

``schema`` (columns, statuses, manifest keys, the provenance record), ``rows`` (the row
builders every measured or failed call goes through), ``run_store`` (writing a run folder
safely) and ``load`` (reading it back for reports and comparisons).
"""
