"""Give a model folder spectral-flatness input channels (JSQAConfig.flatness_bands), ready for `jsqa finetune`.

    python training/add_flatness.py src/jsqa_cli/weights/jsqa-small -o runs/jsqa-small-flat --bands 16
    jsqa finetune --init runs/jsqa-small-flat ... -o runs/flat

The log-mel bands of the `small` preset (64 mel bands, about 250 Hz wide above 4 kHz) blur the harmonics that a
codec at a moderate bitrate replaces with noise, so that without the clean reference its trace is a gentle
high-shelf loss, which voices also have (docs/results.md, eighth version). Log spectral flatness per 500 Hz band
keeps that fine structure. The new channels start with zero weights: the output scores exactly as the input model
until fine-tuning teaches it to use them.
"""

from __future__ import annotations

import argparse

from jsqa_cli.model import add_flatness_bands, load_model, save_model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model name or folder")
    ap.add_argument("-o", "--output", required=True, help="new model folder")
    ap.add_argument("--bands", type=int, default=16, help="equal linear-frequency bands (must divide n_fft / 2)")
    args = ap.parse_args(argv)
    model = load_model(args.model)
    wide = add_flatness_bands(model, args.bands)
    meta = dict(wide.metadata, flatness_added={"from": str(args.model), "bands": args.bands})
    print(save_model(wide, args.output, meta))


if __name__ == "__main__":
    main()
