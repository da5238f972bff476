"""VBench-style evaluators: metric registry, VBench formats and scoring, reports."""
