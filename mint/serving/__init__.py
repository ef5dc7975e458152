"""Serving: multi-LoRA engines behind one port, adapter tiers, the wave scheduler's planning, the API."""
