"""Export a DeepLab model to TFLite and run the file with the LiteRT interpreter.

Builds (or loads) a model, writes a verified `.tflite` (float32, float16, dynamic-range or
int8; optionally with the argmax inside), then segments an image with the plain interpreter
API (no keras_deeplab needed on the device) and saves the class map as a palette PNG.

    python examples/export_tflite.py --model deeplabv3_mobilenetv2_dm05_os8 \
        --weights pascal_voc_mnv2_dm05_os8 --input-size 513 --quantize int8 \
        --calibration images/ --image photo.jpg --out exported/
    python examples/export_tflite.py --input-size 65 --out /tmp/tfl   # random weights, smoke run
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def run_tflite(path, image):
    """Class map of `image` (uint8 RGB, any size) from a `.tflite` DeepLab file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    _, height, width, _ = inp["shape"]
    resized = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    x = np.asarray(resized, np.float32)[None]
    scale, zero_point = inp["quantization"]
    if inp["dtype"] != np.float32:  # integer input: quantize [0, 255] RGB
        x = np.round(x / scale + zero_point).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])[0]
    labels = y if y.ndim == 2 else y.argmax(-1)  # argmax inside, or logits
    back = Image.fromarray(labels.astype(np.uint8)).resize(
        (image.shape[1], image.shape[0]), Image.NEAREST
    )
    return np.asarray(back)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="deeplabv3_mobilenetv2_dm05_os8")
    parser.add_argument("--weights", help=".weights.h5 file or preset (default: random weights)")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument(
        "--quantize", choices=("none", "float16", "dynamic", "int8"), default="none"
    )
    parser.add_argument("--calibration", help="folder of images for int8 calibration")
    parser.add_argument("--argmax", action="store_true", help="uint8 class map output")
    parser.add_argument("--image", help="image to segment (default: a synthetic shapes image)")
    parser.add_argument("--out", default="exported")
    args = parser.parse_args(argv)

    import keras_deeplab
    from keras_deeplab.data import colorize, generate_shapes
    from keras_deeplab.export import to_tflite

    out = Path(args.out)
    model = keras_deeplab.create_model(
        args.model, num_classes=args.num_classes, weights=args.weights
    )
    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        image = generate_shapes("test", 1, image_size=args.input_size)[0][0]
    calibration = args.calibration
    if args.quantize == "int8" and calibration is None:
        calibration = list(generate_shapes("train", 8, image_size=args.input_size)[0])
    path = out / f"{args.model}_{args.quantize}.tflite"
    report = to_tflite(
        model,
        str(path),
        input_size=args.input_size,
        quantize=args.quantize,
        representative_data=calibration,
        argmax=args.argmax,
        report_path=str(path) + ".report.json",
    )
    print(f"wrote {path} ({path.stat().st_size:,} bytes), verified: {report.get('passed')}")
    labels = run_tflite(path, image)
    Image.fromarray(colorize(labels)).save(out / "prediction.png")
    keras_labels = model.predict(image[None].astype("float32"), verbose=0)[0].argmax(-1)
    agreement = float((labels == keras_labels).mean())
    print(f"classes {np.unique(labels).tolist()}, agreement with Keras {agreement:.3f}")
    print(f"wrote {out / 'prediction.png'}")
    return agreement


if __name__ == "__main__":
    main()
