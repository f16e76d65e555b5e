"""Reward functions for plain OpenRLHF (``--reward.remote_url <file.py>``)."""
