"""Makes tests/testdata/tf1_uncased_L-2_H-36_A-3: a tiny BERT checkpoint written by real TensorFlow with the
original variable names, and the outputs of the ORIGINAL 2018 modeling.py graph on a fixed batch.

Not part of the package and not run by the tests (it needs TensorFlow and Google's code). How it was run:

    mkdir -p /work/orig_bert_tf1 && cd <google-research/bert checkout>
    # the last version before bee6030 (Feb 2019, which switched gelu to the tanh approximation): exact erf gelu,
    # the code the released checkpoints were trained with
    for f in modeling.py optimization.py run_pretraining.py tokenization.py; do
      git show f39e881b169b9d53bea03d2d341b31707a6c052b:$f > /work/orig_bert_tf1/$f; done
    /work/tfvenv/bin/python tests/testdata/make_tf1_fixture.py --bert_dir=/work/orig_bert_tf1 \
        --out=tests/testdata/tf1_uncased_L-2_H-36_A-3          # TensorFlow 2.21 (tf.compat.v1), CPU

It writes, under --out:
  bert_config.json, vocab.txt
  bert_model.ckpt.{index,data-00000-of-00001}   every variable run_pretraining.py saves: the model, the MLM and
                                                NSP heads, AdamWeightDecayOptimizer's adam_m/adam_v slots and
                                                global_step (written by tf.train.Saver)
  outputs.npz          the batch (input_ids, input_mask, segment_ids, masked_lm_positions) and what the original
                       graph computes from it: sequence_output, pooled_output, mlm_logits, nsp_logits
  sharded/model.ckpt.*  the same model variables, saved by Saver(sharded=True) from two CPU devices: two
                       data shards
  tf2/ckpt-1.*          a TF2 object-based checkpoint (tf.train.Checkpoint), for the "not TF1" error

With --check=DIR (a TF1 checkpoint directory written by `python -m bert_jax.convert --format=tf1`), it instead
restores DIR with tf.train.Saver into the original graph, runs it on outputs.npz's batch and prints the largest
difference from outputs.npz: the proof that the original code starts from what bert_jax writes.
"""

import argparse
import json
import os
import sys
import types

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1

CONFIG = {
    "vocab_size": 99,
    "hidden_size": 36,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 52,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
}
WORDS = (
    "the a of and to in is was he she it that for on with as his her by at from this be are were an "
    "had not but which or one have they you has all been there their more when who first new two can"
).split()
PIECES = [
    "##s",
    "##ed",
    "##ing",
    "##ly",
    "##er",
    "##est",
    ",",
    ".",
    "!",
    "?",
    "-",
    "'",
    "(",
    ")",
    "1",
    "2",
]


def vocab() -> list[str]:
    tokens = [
        "[PAD]",
        "[unused0]",
        "[unused1]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *PIECES,
        *WORDS,
    ]
    tokens += [chr(c) for c in range(ord("b"), ord("z") + 1) if chr(c) not in tokens]
    return tokens[: CONFIG["vocab_size"]]


def _dense(inputs, units, activation=None, name=None, kernel_initializer=None, **_):
    """tf.layers.dense (TF 1.x) for a rank-2 input: the same variable names, `<scope>/kernel` and `bias`."""
    with v1.variable_scope(name, default_name="dense"):
        kernel = v1.get_variable(
            "kernel", [inputs.shape[-1], units], initializer=kernel_initializer
        )
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
        out = tf.nn.bias_add(tf.matmul(inputs, kernel), bias)
        return activation(out) if activation is not None else out


def _layer_norm(inputs, begin_norm_axis=-1, begin_params_axis=-1, scope=None):
    """tf.contrib.layers.layer_norm over the last axis: `LayerNorm/beta`, `LayerNorm/gamma`, epsilon 1e-12."""
    assert begin_norm_axis == -1 and begin_params_axis == -1
    with v1.variable_scope(scope, default_name="LayerNorm"):
        size = inputs.shape[-1:]
        beta = v1.get_variable("beta", size, initializer=v1.zeros_initializer())
        gamma = v1.get_variable("gamma", size, initializer=v1.ones_initializer())
        mean, variance = tf.nn.moments(inputs, [-1], keepdims=True)
        return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, 1e-12)


def import_original(bert_dir: str):
    """Imports the original modeling/optimization/run_pretraining with `tensorflow` = tf.compat.v1 + shims."""
    shim = types.ModuleType("tensorflow")
    shim.__dict__.update({k: getattr(v1, k) for k in dir(v1) if not k.startswith("__")})
    shim.layers = types.SimpleNamespace(dense=_dense)
    shim.contrib = types.SimpleNamespace(layers=types.SimpleNamespace(layer_norm=_layer_norm))
    sys.modules["tensorflow"] = shim
    sys.path.insert(0, bert_dir)
    import modeling  # noqa: PLC0415
    import optimization  # noqa: PLC0415
    import run_pretraining  # noqa: PLC0415

    sys.modules["tensorflow"] = tf
    assert "tf.erf" in open(modeling.__file__).read(), "not the 2018 modeling.py (exact erf gelu)"
    return modeling, optimization, run_pretraining


def batch():
    rng = np.random.default_rng(7)
    lengths = [17, 11, 6]
    ids = np.zeros((3, 17), np.int32)
    segments = np.zeros((3, 17), np.int32)
    mask = np.zeros((3, 17), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(7, CONFIG["vocab_size"], n)
        ids[row, 0], ids[row, n - 1] = 4, 5
        segments[row, n // 2 : n] = 1
        mask[row, :n] = 1
    positions = np.array([[1, 3, 8, 15], [2, 5, 9, 0], [1, 4, 0, 0]], np.int32)
    return dict(input_ids=ids, input_mask=mask, segment_ids=segments, masked_lm_positions=positions)


def build_graph(modeling, run_pretraining, inputs):
    """The original pretraining graph (is_training=False: no dropout) -> the four output tensors."""
    config = modeling.BertConfig.from_dict(CONFIG)
    placeholders = {k: v1.placeholder(tf.int32, v.shape, name=k) for k, v in inputs.items()}
    model = modeling.BertModel(
        config,
        is_training=False,
        input_ids=placeholders["input_ids"],
        input_mask=placeholders["input_mask"],
        token_type_ids=placeholders["segment_ids"],
        use_one_hot_embeddings=False,
    )
    n = inputs["masked_lm_positions"].shape
    run_pretraining.get_masked_lm_output(
        config,
        model.get_sequence_output(),
        model.get_embedding_table(),
        placeholders["masked_lm_positions"],
        tf.zeros(n, tf.int32),
        tf.ones(n, tf.float32),
    )
    run_pretraining.get_next_sentence_output(
        config, model.get_pooled_output(), tf.zeros([n[0]], tf.int32)
    )
    graph = v1.get_default_graph()
    fetches = {
        "sequence_output": model.get_sequence_output(),
        "pooled_output": model.get_pooled_output(),
        # The logits the heads compute before their log_softmax.
        "mlm_logits": graph.get_tensor_by_name("cls/predictions/BiasAdd:0"),
        "nsp_logits": graph.get_tensor_by_name("cls/seq_relationship/BiasAdd:0"),
    }
    feed = {placeholders[k]: v for k, v in inputs.items()}
    return fetches, feed


def make(args, modeling, optimization, run_pretraining):
    for sub in ("", "sharded", "tf2"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    inputs = batch()
    with v1.Graph().as_default(), v1.Session() as sess:
        fetches, feed = build_graph(modeling, run_pretraining, inputs)
        model_vars = v1.global_variables()
        # run_pretraining.py's optimizer adds the adam_m/adam_v slots and global_step to the checkpoint.
        loss = sum(tf.reduce_sum(t) for t in fetches.values())
        optimization.create_optimizer(loss, 1e-4, 100, 10, use_tpu=False)
        sess.run(v1.global_variables_initializer())
        # Values far from the initialiser's (std 0.2, LayerNorm gamma around 1) so that a transposed or
        # misplaced tensor cannot pass the comparison.
        rng = np.random.default_rng(0)
        for var in v1.global_variables():
            if var.dtype.base_dtype != tf.float32:
                continue
            value = rng.normal(0.0, 0.2, var.shape.as_list()).astype(np.float32)
            if var.name.endswith("gamma:0"):
                value += 1.0
            var.load(value, sess)
        v1.train.Saver().save(
            sess, os.path.join(args.out, "bert_model.ckpt"), write_meta_graph=False
        )
        outputs = sess.run(fetches, feed)
        values = {v.op.name: sess.run(v) for v in model_vars}
    np.savez(os.path.join(args.out, "outputs.npz"), **inputs, **outputs)
    with open(os.path.join(args.out, "bert_config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    with open(os.path.join(args.out, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab()) + "\n")

    # The same model variables from two devices: Saver(sharded=True) writes one data shard per device.
    config = v1.ConfigProto(device_count={"CPU": 2})
    with v1.Graph().as_default(), v1.Session(config=config) as sess:
        variables = []
        for i, (name, value) in enumerate(sorted(values.items())):
            with tf.device(f"/cpu:{i % 2}"):
                variables.append(v1.get_variable(name, initializer=value))
        sess.run(v1.global_variables_initializer())
        prefix = os.path.join(args.out, "sharded", "model.ckpt")
        v1.train.Saver(variables, sharded=True).save(sess, prefix, write_meta_graph=False)

    # A TF2 object-based checkpoint: what `bert_jax` must refuse with "this is a TF2 checkpoint".
    with v1.Graph().as_default(), v1.Session() as sess:
        kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="kernel")
        sess.run(v1.global_variables_initializer())
        v1.train.Checkpoint(kernel=kernel).save(os.path.join(args.out, "tf2", "ckpt"), session=sess)

    print({k: (v.shape, float(np.abs(v).max())) for k, v in outputs.items()})


def check(args, modeling, run_pretraining):
    """Restores a bert_jax-written TF1 checkpoint into the original graph and compares its outputs."""
    expected = np.load(os.path.join(args.out, "outputs.npz"))
    inputs = {k: expected[k] for k in batch()}
    reader = v1.train.NewCheckpointReader(os.path.join(args.check, "bert_model.ckpt"))
    print("TF's reader sees", len(reader.get_variable_to_shape_map()), "variables")
    with v1.Graph().as_default(), v1.Session() as sess:
        fetches, feed = build_graph(modeling, run_pretraining, inputs)
        v1.train.Saver().restore(sess, os.path.join(args.check, "bert_model.ckpt"))
        outputs = sess.run(fetches, feed)
    diff = max(float(np.abs(outputs[k] - expected[k]).max()) for k in outputs)
    print(f"original graph on {args.check}: max |difference| from outputs.npz = {diff:.3g}")
    assert diff <= 1e-5, diff


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bert_dir", required=True, help="the original google-research/bert files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--check", help="a TF1 checkpoint directory written by bert_jax to verify")
    args = parser.parse_args()
    v1.disable_eager_execution()
    modeling, optimization, run_pretraining = import_original(args.bert_dir)
    if args.check:
        check(args, modeling, run_pretraining)
    else:
        make(args, modeling, optimization, run_pretraining)


if __name__ == "__main__":
    main()
