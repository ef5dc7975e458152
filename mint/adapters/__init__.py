"""LoRA adapters: the PEFT layout (what the store holds, what peft and vLLM load), a packed layout for
fast loads, their content address, and validation against a base. Only `tensors` and `synthetic` need
torch; the rest runs in the control plane.
"""
