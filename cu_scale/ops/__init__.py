"""What a user runs on top of the stages: the pipeline (stage table, markers, resume), the Tune search,
the loss ablation, the paper-table comparison, one-query prediction, Ray job submission."""
