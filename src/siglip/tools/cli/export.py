"""`siglip export`: both towers of a checkpoint as ONNX files, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
import importlib.util

from ..embeddings.embedder import DEFAULT_MODEL, Embedder
from ..embeddings.onnx_export import check_onnx, export_onnx
from ._options import integer, output_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model's two towers to ONNX",
        description=(
            "Write vision_model.onnx (pixel_values -> image_embeds; for a SigLIP 2 NaFlex model pixel_values, "
            "pixel_attention_mask and spatial_shapes as its image processor makes them, at any number of "
            "patches) and text_model.onnx (input_ids -> text_embeds), both with a dynamic batch axis, and the "
            "tokenizer and image-processor files, into --out. With onnxruntime installed, both files are then "
            "run and compared with PyTorch."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"bundled model name, local folder or hub id (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--out", required=True, type=output_folder, help="output folder (created if needed)")
    parser.add_argument("--opset", type=integer(17), default=17, help="ONNX opset, at least 17 (default: 17)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    embedder = Embedder.from_pretrained(args.model, device="cpu", precision="fp32")
    model = embedder.model
    paths = export_onnx(model, args.out, args.opset)
    embedder.processor.save_pretrained(args.out)
    print(f"wrote {paths['vision']} and {paths['text']} (opset {args.opset}) with the processor files")
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed: the export was not checked (pip install 'siglip[onnx]')")
        return 0
    check = check_onnx(model, paths)
    for tower in paths:
        print(
            f"{tower}: onnxruntime vs PyTorch, max |difference| {check.max_abs_diff[tower]:.2e}, "
            f"lowest cosine {check.min_cosine[tower]:.6f}"
        )
    return 0
