"""Export a keras_deeplab model as a SavedModel with serving signatures (verified).

Example:
    python export/export_saved_model.py --model deeplabv3_mobilenetv2_dm05_os8 \
        --weights w.weights.h5 --out exported/deeplab
Same as `keras-deeplab export --format saved_model`; see export/README.md.
"""

import argparse
import json
import sys
from pathlib import Path

import keras_deeplab
from keras_deeplab.export import to_saved_model
from keras_deeplab.export.report import VerificationError

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", required=True, help="registered name (keras-deeplab models)")
parser.add_argument("--weights", help=".weights.h5 file or preset name")
parser.add_argument("--num-classes", type=int, default=21)
parser.add_argument("--labels", help="text file, one class name per line")
parser.add_argument("--out", required=True, help="output directory")
parser.add_argument("--overwrite", action="store_true")
args = parser.parse_args()

model = keras_deeplab.create_model(args.model, num_classes=args.num_classes, weights=args.weights)
report_path = Path(args.out).with_suffix(".report.json")
try:
    report = to_saved_model(
        model, args.out, labels=args.labels, overwrite=args.overwrite, report_path=report_path
    )
except VerificationError as error:
    sys.exit(f"verification FAILED: {error}\nreport: {report_path}")
except (ValueError, OSError) as error:
    sys.exit(f"error: {error}")
print(json.dumps({k: report[k] for k in ("max_abs_diff", "latency_ms", "size_bytes")}, indent=1))
print(f"wrote {args.out} (signatures: {', '.join(report['signatures'])}); report {report_path}")
