"""The conversion command (a CLI: no library module imports it; the work is `bert_jax.export`).

    python -m bert_jax.convert --from=PATH --to=OUT --format=transformers|bert_jax|tf1 [--head=auto]

PATH is a transformers-layout directory, Google's TF1 checkpoint of BERT, ALBERT or ELECTRA (directory or prefix;
the family told by its variable names) or a bert_jax workdir
(pretraining or fine-tuning; `--step` picks a checkpoint, default the latest). OUT receives:
  transformers  config.json (with num_labels/id2label), model.safetensors, vocab.txt,
                tokenizer_config.json (do_lower_case), special_tokens_map.json
  tf1           bert_config.json, vocab.txt, bert_model.ckpt.{index,data-00000-of-00001} (Google's names;
                the original run_classifier.py takes it as --init_checkpoint); ALBERT: albert_config.json,
                spiece.model, model.ckpt-best.*; ELECTRA: hparams.json (run_pretraining.py --hparams),
                vocab.txt, model.ckpt.* (--head=rtd keeps the generator); RoBERTa has none
  bert_jax      OUT/checkpoints/0/ (parameters only) + OUT/tokenizer/: loads with load_pretrained(OUT)
At the end both models run on a fixed batch (the written one through transformers/PyTorch when the
target is the transformers layout and they are installed, else through bert_jax's reader) and the largest
difference is printed; above --tolerance (relative to the largest output) the command fails.
"""

from __future__ import annotations

import argparse
import sys

from bert_jax import export
from bert_jax.models import registry


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--from", dest="source", required=True, help="checkpoint to read (any layout)"
    )
    parser.add_argument("--to", dest="out", required=True, help="output directory")
    parser.add_argument("--format", required=True, choices=export.FORMATS)
    parser.add_argument(
        "--head", default="auto", choices=("auto", *registry.HEADS, "multiple_choice", "masked_lm")
    )
    parser.add_argument("--do_lower_case", default="auto", choices=("auto", "true", "false"))
    parser.add_argument(
        "--step", type=int, default=None, help="workdir checkpoint step (default latest)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    lower = {"auto": None, "true": True, "false": False}[args.do_lower_case]
    try:
        export.convert_checkpoint(
            args.source, args.out, args.format, head=args.head, do_lower_case=lower,
            step=args.step, tolerance=args.tolerance,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")


if __name__ == "__main__":
    run()
