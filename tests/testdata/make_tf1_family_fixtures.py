"""Makes tests/testdata/tf1_albert_L-2_H-36_E-20 and tests/testdata/tf1_electra_L-2_H-36_E-20: tiny ALBERT and
ELECTRA checkpoints written by real TensorFlow from the ORIGINAL google-research/albert and google-research/electra
graphs, with the outputs of those graphs on a fixed batch (the sibling of make_tf1_fixture.py, which does BERT).

Not part of the package and not run by the tests (it needs TensorFlow and Google's code). How it was run:

    mkdir -p /work/orig_albert/albert /work/orig_electra
    cd <google-research/albert checkout at b772393d3dae115b493258ce8e37c17b2cc62100>
    for f in modeling.py run_pretraining.py optimization.py lamb_optimizer.py; do
      git show HEAD:$f > /work/orig_albert/albert/$f; done; touch /work/orig_albert/albert/__init__.py
    cd <google-research/electra checkout at 8a46635f32083ada044d7e9ad09604742600ee7b>
    git archive HEAD | tar -x -C /work/orig_electra
    /work/tfvenv/bin/python tests/testdata/make_tf1_family_fixtures.py --albert_dir=/work/orig_albert \
        --electra_dir=/work/orig_electra --out=tests/testdata          # TensorFlow 2.21 (tf.compat.v1), CPU

What is shimmed (TensorFlow 2.21 lacks parts of TF 1.15; the original files are imported unchanged, with these
modules in sys.modules while they import):
  * `tensorflow`, `tensorflow.compat.v1`: tf.compat.v1 itself, except
      - `tf.layers.dense` -> `_dense`: a `<name>/kernel` [in, out] + `<name>/bias` variable pair applied over the
        last axis (TF 1.x's tf.layers.dense for any rank; Keras 3 no longer provides it);
      - `tf.estimator` -> a namespace with `SessionRunHook` (ELECTRA's util/training_utils subclasses it at import;
        nothing here runs an Estimator);
  * `tensorflow.contrib.layers.layer_norm` -> `_layer_norm` (make_tf1_fixture.py's: `LayerNorm/beta`,
    `LayerNorm/gamma`, epsilon 1e-12, as contrib's); `tensorflow.contrib.tpu` / `cluster_resolver`: empty
    namespaces (imported by the training scripts, used only on TPUs).

ALBERT (albert/modeling.py + run_pretraining.py's get_masked_lm_output / get_sentence_order_output, LAMB's
optimizer slots by optimization.create_optimizer): tf1_albert_L-2_H-36_E-20/
  albert_config.json, model.ckpt-best.{index,data-00000-of-00001}
  outputs.npz   the batch and sequence_output, pooled_output, mlm_logits, sop_logits
  (the tokenizer, 30k-clean.model in a release, is bert_jax's bundled albert_sample_spm.model: the tests copy it in)

ELECTRA (model/modeling.py + run_pretraining.py's PretrainingModel methods and get_generator_config, AdamW slots by
model/optimization.create_optimizer): tf1_electra_L-2_H-36_E-20/
  model.ckpt-7.{index,data-00000-of-00001}, checkpoint, vocab.txt, hparams.json (run_pretraining.py's --hparams:
  the sizes as model_hparam_overrides, the original's only record of them)
  outputs.npz   the batch and generator_sequence_output, generator_mlm_logits (on the masked ids, at
                masked_lm_positions), discriminator_sequence_output, discriminator_logits (on the "fake" ids)
With --check_albert=DIR / --check_electra=DIR (TF1 directories written by `python -m bert_jax.convert
--format=tf1`), it instead restores DIR with tf.train.Saver into the original graph (no optimizer), runs it on
outputs.npz's batch and asserts the largest difference from outputs.npz is within 1e-5 (nothing is written).

PretrainingModel.__init__ masks and samples at random, so the fixture runs its parts in the order __init__ does
(generator, generator_predictions, discriminator, discriminator_predictions) on a fixed masked batch and a fixed
replaced batch; the variable names are those __init__ gives.
"""

import argparse
import json
import os
import sys
import types

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tf1_fixture import _layer_norm, vocab  # noqa: E402

v1 = tf.compat.v1

ALBERT_CONFIG = {
    "vocab_size": 1000,
    "embedding_size": 20,
    "hidden_size": 36,
    "num_hidden_layers": 2,
    "num_hidden_groups": 1,
    "num_attention_heads": 3,
    "intermediate_size": 52,
    "inner_group_num": 1,
    "down_scale_factor": 1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0,
    "attention_probs_dropout_prob": 0,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
}
# run_pretraining.py --hparams: ELECTRA's record of a model's size (model_hparam_overrides wins over model_size).
ELECTRA_HPARAMS = {
    "model_size": "small",
    "vocab_size": 99,
    "embedding_size": 20,
    "generator_hidden_size": 1 / 3,
    "generator_layers": 0.5,
    "model_hparam_overrides": {
        "hidden_size": 36,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "intermediate_size": 52,
        "max_position_embeddings": 40,
    },
}


def _dense(inputs, units, activation=None, name=None, kernel_initializer=None, **_):
    """tf.layers.dense (TF 1.x) over the last axis of any rank: `<scope>/kernel` [in, out] and `<scope>/bias`."""
    with v1.variable_scope(name, default_name="dense"):
        kernel = v1.get_variable(
            "kernel", [inputs.shape[-1], units], initializer=kernel_initializer
        )
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
        out = tf.nn.bias_add(tf.tensordot(inputs, kernel, [[inputs.shape.rank - 1], [0]]), bias)
        return activation(out) if activation is not None else out


def shimmed_import(directory: str, names: list[str]) -> list:
    """Imports the original modules `names` from `directory` with the shims in the docstring."""
    shim = types.ModuleType("tensorflow.compat.v1")
    shim.__dict__.update(
        {
            k: getattr(v1, k)
            for k in dir(v1)
            if not k.startswith("__") and k not in ("layers", "estimator")
        }
    )
    shim.layers = types.SimpleNamespace(dense=_dense)
    shim.estimator = types.SimpleNamespace(
        SessionRunHook=object, ModeKeys=types.SimpleNamespace(TRAIN="train", EVAL="eval")
    )
    compat = types.ModuleType("tensorflow.compat")
    compat.v1 = shim
    contrib = types.ModuleType("tensorflow.contrib")
    contrib.layers = types.SimpleNamespace(layer_norm=_layer_norm)
    contrib.tpu = contrib.cluster_resolver = types.SimpleNamespace()
    top = types.ModuleType("tensorflow")
    top.__dict__.update(shim.__dict__)
    top.compat, top.contrib = compat, contrib
    saved = {
        k: sys.modules.get(k) for k in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1")
    }
    sys.modules.update({"tensorflow": top, "tensorflow.compat": compat, "tensorflow.compat.v1": shim,
                        "tensorflow.contrib": contrib})  # fmt: skip
    sys.path.insert(0, directory)
    try:
        return [__import__(name, fromlist=["_"]) for name in names]
    finally:
        sys.modules.update(saved)
        sys.path.remove(directory)


def randomize(sess) -> None:
    """Every float variable (model and optimizer slots) to values far from the initialiser's (std 0.2, LayerNorm
    gamma around 1), so that a transposed or misplaced tensor cannot pass the comparison."""
    rng = np.random.default_rng(0)
    for var in v1.global_variables():
        if var.dtype.base_dtype != tf.float32:
            continue
        value = rng.normal(0.0, 0.2, var.shape.as_list()).astype(np.float32)
        if var.name.endswith("gamma:0"):
            value += 1.0
        var.load(value, sess)


def batch(vocab_size: int, low: int):
    """Three rows of 17 (lengths 17, 11, 6), both segments, four prediction positions per row."""
    rng = np.random.default_rng(7)
    ids = np.zeros((3, 17), np.int32)
    segments = np.zeros((3, 17), np.int32)
    mask = np.zeros((3, 17), np.int32)
    for row, n in enumerate([17, 11, 6]):
        ids[row, :n] = rng.integers(low, vocab_size, n)
        segments[row, n // 2 : n] = 1
        mask[row, :n] = 1
    positions = np.array([[1, 3, 8, 15], [2, 5, 9, 0], [1, 4, 0, 0]], np.int32)
    return dict(input_ids=ids, input_mask=mask, segment_ids=segments, masked_lm_positions=positions)


def make_albert(args):
    modeling, run_pretraining, optimization = shimmed_import(
        args.albert_dir, ["albert.modeling", "albert.run_pretraining", "albert.optimization"]
    )
    out = os.path.join(args.out, "tf1_albert_L-2_H-36_E-20")
    os.makedirs(out, exist_ok=True)
    inputs = batch(ALBERT_CONFIG["vocab_size"], 5)
    inputs["input_ids"][:, 0] = 2  # [CLS]
    with v1.Graph().as_default(), v1.Session() as sess:
        config = modeling.AlbertConfig.from_dict(ALBERT_CONFIG)
        ph = {k: v1.placeholder(tf.int32, v.shape, name=k) for k, v in inputs.items()}
        model = modeling.AlbertModel(
            config, is_training=False, input_ids=ph["input_ids"], input_mask=ph["input_mask"],
            token_type_ids=ph["segment_ids"], use_one_hot_embeddings=False,
        )  # fmt: skip
        n = inputs["masked_lm_positions"].shape
        run_pretraining.get_masked_lm_output(
            config, model.get_sequence_output(), model.get_embedding_table(),
            ph["masked_lm_positions"], tf.zeros(n, tf.int32), tf.ones(n, tf.float32),
        )  # fmt: skip
        run_pretraining.get_sentence_order_output(
            config, model.get_pooled_output(), tf.zeros([n[0]], tf.int32)
        )
        graph = v1.get_default_graph()
        fetches = {
            "sequence_output": model.get_sequence_output(),
            "pooled_output": model.get_pooled_output(),
            # The logits the heads compute before their log_softmax.
            "mlm_logits": graph.get_tensor_by_name("cls/predictions/BiasAdd:0"),
            "sop_logits": graph.get_tensor_by_name("cls/seq_relationship/BiasAdd:0"),
        }
        if args.check_albert:
            return check(sess, args.check_albert, fetches, ph, os.path.join(out, "outputs.npz"))
        loss = sum(tf.reduce_sum(t) for t in fetches.values())
        optimization.create_optimizer(loss, 1e-4, 100, 10, use_tpu=False, optimizer="lamb")
        sess.run(v1.global_variables_initializer())
        randomize(sess)
        v1.train.Saver(save_relative_paths=True).save(
            sess, os.path.join(out, "model.ckpt-best"), write_meta_graph=False
        )
        outputs = sess.run(fetches, {ph[k]: v for k, v in inputs.items()})
    np.savez(os.path.join(out, "outputs.npz"), **inputs, **outputs)
    with open(os.path.join(out, "albert_config.json"), "w") as f:
        json.dump(ALBERT_CONFIG, f, indent=2)
    print("albert", {k: (v.shape, float(np.abs(v).max())) for k, v in outputs.items()})


def make_electra(args):
    configure, run_pretraining, pretrain_data, optimization = shimmed_import(
        args.electra_dir,
        [
            "configure_pretraining",
            "run_pretraining",
            "pretrain.pretrain_data",
            "model.optimization",
        ],
    )
    out = os.path.join(args.out, "tf1_electra_L-2_H-36_E-20")
    os.makedirs(out, exist_ok=True)
    inputs = batch(ELECTRA_HPARAMS["vocab_size"], 7)
    inputs["input_ids"][:, 0] = 4  # [CLS]
    positions = inputs["masked_lm_positions"]
    rows = np.arange(3)[:, None]
    masked = inputs["input_ids"].copy()
    masked[rows, positions] = 6  # [MASK]
    fake = inputs["input_ids"].copy()
    fake[rows, positions] = np.random.default_rng(9).integers(7, 99, positions.shape)
    inputs.update(masked_input_ids=masked, fake_input_ids=fake)
    with v1.Graph().as_default(), v1.Session() as sess:
        config = configure.PretrainingConfig("tiny", "/nonexistent", **ELECTRA_HPARAMS)
        ph = {k: v1.placeholder(tf.int32, v.shape, name=k) for k, v in inputs.items()}
        model = run_pretraining.PretrainingModel.__new__(run_pretraining.PretrainingModel)
        model._config = config
        model._bert_config = run_pretraining.training_utils.get_bert_config(config)
        weights = tf.ones(positions.shape, tf.float32)

        def as_inputs(ids):
            return pretrain_data.Inputs(
                input_ids=ids, input_mask=ph["input_mask"], segment_ids=ph["segment_ids"],
                masked_lm_positions=ph["masked_lm_positions"],
                masked_lm_ids=tf.zeros(positions.shape, tf.int32), masked_lm_weights=weights,
            )  # fmt: skip

        # PretrainingModel.__init__'s electra_objective + untied_generator path, in its order.
        masked_inputs, fake_inputs = (
            as_inputs(ph["masked_input_ids"]),
            as_inputs(ph["fake_input_ids"]),
        )
        generator = run_pretraining.build_transformer(
            config, masked_inputs, False,
            run_pretraining.get_generator_config(config, model._bert_config),
            embedding_size=config.embedding_size, untied_embeddings=False, scope="generator",
        )  # fmt: skip
        mlm_output = model._get_masked_lm_output(masked_inputs, generator)
        discriminator = run_pretraining.build_transformer(
            config, fake_inputs, False, model._bert_config, reuse=False,
            embedding_size=config.embedding_size,
        )  # fmt: skip
        disc = model._get_discriminator_output(
            fake_inputs, discriminator, tf.zeros(inputs["input_ids"].shape, tf.int32)
        )
        fetches = {
            "generator_sequence_output": generator.get_sequence_output(),
            "generator_mlm_logits": mlm_output.logits,
            "discriminator_sequence_output": discriminator.get_sequence_output(),
            # sigmoid(logits) are the probabilities.
            "discriminator_logits": v1.get_default_graph().get_tensor_by_name(
                "discriminator_predictions/Squeeze:0"
            ),
        }
        if args.check_electra:
            return check(sess, args.check_electra, fetches, ph, os.path.join(out, "outputs.npz"))
        loss = mlm_output.loss + 50 * disc.loss
        optimization.create_optimizer(loss, 1e-4, 100, use_tpu=False, warmup_steps=10)
        sess.run(v1.global_variables_initializer())
        randomize(sess)
        step = v1.train.get_or_create_global_step()
        step.load(7, sess)
        v1.train.Saver(save_relative_paths=True).save(
            sess, os.path.join(out, "model.ckpt"), global_step=step, write_meta_graph=False
        )
        outputs = sess.run(fetches, {ph[k]: v for k, v in inputs.items()})
    np.savez(os.path.join(out, "outputs.npz"), **inputs, **outputs)
    with open(os.path.join(out, "hparams.json"), "w") as f:
        json.dump(ELECTRA_HPARAMS, f, indent=2)
    with open(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab()) + "\n")
    print("electra", {k: (v.shape, float(np.abs(v).max())) for k, v in outputs.items()})


def check(sess, directory, fetches, placeholders, expected_path):
    """Restores a bert_jax-written TF1 checkpoint (`convert --format=tf1`) into the original graph and compares
    its outputs on the fixture's batch with the fixture's: the proof that the original code starts from it."""
    expected = np.load(expected_path)
    prefix = v1.train.latest_checkpoint(directory) or tf_checkpoint_prefix(directory)
    v1.train.Saver().restore(sess, prefix)
    outputs = sess.run(fetches, {ph: expected[k] for k, ph in placeholders.items()})
    diff = max(float(np.abs(outputs[k] - expected[k]).max()) for k in outputs)
    print(f"original graph on {prefix}: max |difference| from {expected_path} = {diff:.3g}")
    assert diff <= 1e-5, diff


def tf_checkpoint_prefix(directory):
    """The one checkpoint in `directory` (bert_jax writes no `checkpoint` state file)."""
    (index,) = [f for f in os.listdir(directory) if f.endswith(".index")]
    return os.path.join(directory, index[: -len(".index")])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--albert_dir", required=True, help="holds albert/ (google-research/albert's files)"
    )
    parser.add_argument("--electra_dir", required=True, help="a google-research/electra tree")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--check_albert", help="an ALBERT TF1 directory written by bert_jax to verify"
    )
    parser.add_argument(
        "--check_electra", help="an ELECTRA TF1 directory written by bert_jax to verify"
    )
    args = parser.parse_args()
    v1.disable_eager_execution()
    checking = args.check_albert or args.check_electra
    if args.check_albert or not checking:
        make_albert(args)
    if args.check_electra or not checking:
        make_electra(args)


if __name__ == "__main__":
    main()
