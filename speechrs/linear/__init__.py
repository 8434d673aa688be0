"""Linear layers and the compute plan: the device, dtype and quantization chosen once at load (compute), int8 / int4
weight-only layers (quant) with their codes (quant_codes) and stored form (quant_store), bf16 weights packed for
oneDNN (packing) or upcast where the CPU lacks native bf16 (upcast)."""
