"""Export a keras_deeplab model to TFLite at a fixed input size (verified).

Example:
    python export/export_tflite.py --model deeplabv3_mobilenetv2_dm05_os8 --weights w.weights.h5 \
        --input-size 257 --quantize int8 --representative-data images/ --argmax --out deeplab.tflite
Same as `keras-deeplab export --format tflite`; see export/README.md.
"""

import argparse
import json
import sys
from pathlib import Path

import keras_deeplab
from keras_deeplab.export import to_tflite
from keras_deeplab.export.report import VerificationError

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", required=True, help="registered name (keras-deeplab models)")
parser.add_argument("--weights", help=".weights.h5 file or preset name")
parser.add_argument("--num-classes", type=int, default=21)
parser.add_argument("--input-size", type=int, nargs="+", default=[513], help="S or H W")
parser.add_argument("--quantize", default="none", choices=["none", "float16", "dynamic", "int8"])
parser.add_argument("--representative-data", help="image folder (needed for int8)")
parser.add_argument("--argmax", action="store_true", help="uint8 class-map output")
parser.add_argument("--out", required=True, help="output .tflite file")
args = parser.parse_args()

model = keras_deeplab.create_model(args.model, num_classes=args.num_classes, weights=args.weights)
size = args.input_size[0] if len(args.input_size) == 1 else tuple(args.input_size[:2])
report_path = Path(args.out).with_suffix(".report.json")
try:
    report = to_tflite(
        model,
        args.out,
        input_size=size,
        quantize=args.quantize,
        representative_data=args.representative_data,
        argmax=args.argmax,
        report_path=report_path,
    )
except VerificationError as error:
    sys.exit(f"verification FAILED: {error}\nreport: {report_path}")
except (ValueError, OSError) as error:
    sys.exit(f"error: {error}")
print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict | list)}, indent=1))
print(f"wrote {args.out}; report {report_path}")
