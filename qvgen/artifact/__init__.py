"""The deployed artifact: save / load of quantized models (safetensors + qvgen.json, hashed) and the
diffusers integration (Quantized<Class>, save_pretrained / from_pretrained).

Imports the method (`qvgen.quant`) and `qvgen.storage`, never training, data or applications.
"""
