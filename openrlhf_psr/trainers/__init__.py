"""Trainers: step-level DPO on OpenRLHF's DPOTrainer and DeepSpeed strategy."""
