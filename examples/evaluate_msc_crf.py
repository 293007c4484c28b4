"""Evaluate a model with multi-scale inputs, flipping and the dense CRF; compare the protocols.

Scores one dataset split with single-scale inference, then multi-scale + flip (the official
DeepLab v3/v3+ eval protocol: softmax averaged over scales 0.5..1.75 and their mirror images),
then multi-scale + flip + dense CRF (DeepLab v1/v2 post-processing; needs
`pip install -e ".[crf]"`, skipped with a note otherwise), and prints one table.

    python examples/evaluate_msc_crf.py --data /data/VOCdevkit --split val \
        --model deeplabv3_mobilenetv2_dm05_os8 --weights pascal_voc_mnv2_dm05_os8
    python examples/evaluate_msc_crf.py --data ../shared/data/voc2012_samples \
        --from-tflite deeplabv3_257_mv_gpu.tflite
    python examples/evaluate_msc_crf.py --data shapes --limit 4 --scales 0.75,1   # smoke run

`--data shapes` uses the built-in synthetic set (5 classes); a model without `--weights`
has random weights (useful only to check the pipeline).
"""

import argparse
import time

OFFICIAL_SCALES = "0.5,0.75,1,1.25,1.5,1.75"


def load_model(args, num_classes):
    import keras_deeplab

    if args.from_tflite:
        from keras_deeplab.weights.tflite import load_tflite

        return load_tflite(args.from_tflite)
    return keras_deeplab.create_model(args.model, num_classes=num_classes, weights=args.weights)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder, 'shapes' or 'tfds:NAME'")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-classes", type=int, default=21, help="folder datasets (VOC: 21)")
    parser.add_argument("--model", default="deeplabv3_mobilenetv2_dm05_os8")
    parser.add_argument("--weights", help=".weights.h5 file or preset (default: random weights)")
    parser.add_argument("--from-tflite", metavar="FILE", help="an official DeepLab .tflite instead")
    parser.add_argument("--scales", default=OFFICIAL_SCALES, help="multi-scale eval scales")
    parser.add_argument("--crf", default="deeplabv2_resnet101", help="CRF preset ('' = no CRF)")
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--image-size", type=int, default=64, help="--data shapes: image size")
    args = parser.parse_args(argv)

    from keras_deeplab import crf as dense_crf
    from keras_deeplab.data import load_data
    from keras_deeplab.evaluation import Segmenter
    from keras_deeplab.evaluation.evaluate import evaluate

    if args.data == "shapes":
        data = load_data("shapes", args.split, image_size=args.image_size)
    else:
        data = load_data(args.data, args.split, num_classes=args.num_classes)
    model = load_model(args, data.num_classes)
    scales = tuple(float(s) for s in args.scales.split(","))
    protocols = [
        ("single scale", {"scales": (1.0,)}),
        (f"scales {args.scales} + flip", {"scales": scales, "flip": True}),
    ]
    if args.crf and dense_crf.is_available():
        protocols.append(
            (f"... + CRF {args.crf}", {"scales": scales, "flip": True, "crf": args.crf})
        )
    elif args.crf:
        print("dense CRF not installed (pip install -e '.[crf]'): CRF row skipped")
    rows = []
    for name, options in protocols:
        start = time.perf_counter()
        result = evaluate(Segmenter(model, **options), data, limit=args.limit, progress=False)
        rows.append((name, result["miou"], result["pixel_accuracy"], time.perf_counter() - start))
    print(f"{data.name}, {result['num_images']} images")
    print("| protocol | mIoU | pixel acc. | seconds |\n|---|---|---|---|")
    for name, miou, accuracy, seconds in rows:
        print(f"| {name} | {miou:.4f} | {accuracy:.4f} | {seconds:.1f} |")
    return rows


if __name__ == "__main__":
    main()
