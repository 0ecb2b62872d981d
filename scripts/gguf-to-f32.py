#!/usr/bin/env python3
"""Writes a copy of a GGUF file with every tensor dequantized to F32 (metadata unchanged).

Usage: gguf-to-f32.py IN.gguf OUT.gguf   (needs numpy and gguf)

llama.cpp multiplies F32 weights in f32, without the 8-bit activation rounding its quantized
types use, so exports made from the F32 copy let check-export.py compare llama.cpp's
next-token log-probabilities with evopress's closely (see docs/export-formats.md).
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    r = GGUFReader(sys.argv[1])
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(sys.argv[2], arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, value, vtype)
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape)]
        w.add_tensor(t.name, data.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
