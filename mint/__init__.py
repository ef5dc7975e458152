"""MinT: many LoRA policies over a few resident bases, as an event-sourced actor system."""
