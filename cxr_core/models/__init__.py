"""Networks: the architecture registry (``zoo``, one ``@register`` per architecture) and the
weights file format (``weights_file``: safetensors at fp32, fp16 or int8). Knows nothing of
data folders, runs or training."""
