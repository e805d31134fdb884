"""Roofline planner: what FP8 with UE8M0 scales buys on each accelerator."""
