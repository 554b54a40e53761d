"""``python -m fedmask``: turn a model file into ONNX and a plain state dict, or
classify images with it.

    python -m fedmask export MODEL [--onnx OUT.onnx] [--state-dict OUT.safetensors]
    python -m fedmask predict MODEL IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from fedmask.nn.model_file import ModelFileError, load_model, read_model_file


def input_shape(header: dict, given: Sequence[int] | None) -> tuple[int, ...]:
    """One input example's shape: `given`, else the file's dataset (C, H, W)."""
    if given:
        return tuple(given)
    dataset = header.get("dataset")
    if not dataset:
        raise ModelFileError("dataset: the file names no input shape; pass --input-shape")
    return dataset["in_channels"], dataset["image_size"], dataset["image_size"]


def export(model_path: Path, onnx_path: Path, state_path: Path,
           shape: Sequence[int] | None = None) -> None:
    """Write the model as ONNX (input ``input``, output ``logits``, any batch size)
    and as a plain float32 state dict (safetensors)."""
    _, header = read_model_file(model_path)
    model = load_model(model_path)
    example = torch.zeros(1, *input_shape(header, shape))
    torch.onnx.export(model, (example,), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(state_path))


def image_tensor(path: Path, dataset: dict) -> torch.Tensor:
    """An image file as the model's input: the dataset's channels, size and normalisation."""
    from PIL import Image  # Pillow comes with torchvision

    mode = "L" if dataset["in_channels"] == 1 else "RGB"
    size = dataset["image_size"]
    image = Image.open(path).convert(mode).resize((size, size))
    pixels = np.asarray(image, dtype=np.float32).reshape(size, size, -1) / 255.0
    mean = np.asarray(dataset["mean"], np.float32)
    std = np.asarray(dataset["std"], np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())


def predict(model_path: Path, images: Sequence[Path]) -> list[int]:
    """The class index the model gives each image."""
    _, header = read_model_file(model_path)
    if not header.get("dataset"):
        raise ModelFileError("dataset: the file names no input format for images")
    model = load_model(model_path)
    batch = torch.stack([image_tensor(path, header["dataset"]) for path in images])
    with torch.no_grad():
        return model(batch).argmax(1).tolist()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; non-zero on a bad model file or image."""
    parser = argparse.ArgumentParser(prog="python -m fedmask", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write ONNX and a plain state dict")
    out.add_argument("model", type=Path)
    out.add_argument("--onnx", type=Path, help="default: MODEL with suffix .onnx")
    out.add_argument("--state-dict", type=Path,
                     help="default: MODEL's folder, <stem>.state_dict.safetensors")
    out.add_argument("--input-shape", type=int, nargs="+", help="C H W when the file has none")
    guess = commands.add_parser("predict", help="print the class of each image")
    guess.add_argument("model", type=Path)
    guess.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            onnx_path = args.onnx or args.model.with_suffix(".onnx")
            state = args.state_dict or args.model.with_name(f"{args.model.stem}.state_dict"
                                                            ".safetensors")
            export(args.model, onnx_path, state, args.input_shape)
            print(f"wrote {onnx_path} and {state}")
        else:
            for path, label in zip(args.images, predict(args.model, args.images)):
                print(f"{path}\t{label}")
    except (ModelFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
