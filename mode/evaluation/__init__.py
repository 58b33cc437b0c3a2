"""Evaluation: DataComp's task format and metrics (tasks), logits per model (evaluate), the experts' ensemble."""
