"""LoRA over resident bases: many adapters per model, mixed per batch row."""
