"""Runnable pipelines composing vdiff, data_prep and eval; the ``vdiff`` command line."""
