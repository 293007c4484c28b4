"""Build a DeepLab model, print its size and cost, and segment an image.

Usage: python examples/build_and_segment.py [IMAGE] [--model NAME]
The weights are random until pretrained weights are loaded (see the README).
"""

import argparse

import numpy as np
from PIL import Image

import keras_deeplab


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", nargs="?", help="an RGB image (default: a synthetic one)")
    parser.add_argument("--model", default="deeplabv3plus_mobilenetv2")
    args = parser.parse_args()
    model = keras_deeplab.create_model(args.model)
    total, trainable = keras_deeplab.count_params(model)
    print(f"{args.model}: {total:,} parameters ({trainable:,} trainable)")
    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"), "float32")
    else:
        image = np.random.default_rng(0).uniform(0, 255, (129, 97, 3)).astype("float32")
    logits = model.predict(image[None], verbose=0)
    labels = logits[0].argmax(-1)
    print(f"input {image.shape[:2]} -> logits {logits.shape}, classes present {np.unique(labels)}")


if __name__ == "__main__":
    main()
