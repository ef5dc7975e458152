"""Training many LoRA policies at once over one resident base: SFT and GRPO, exported adapter-only."""
