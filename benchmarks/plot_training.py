"""Plot the loss curves that examples/train_reference.py logged (needs matplotlib).

    python benchmarks/plot_training.py benchmarks/train_reference_log.json benchmarks/train_reference_curves.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(log_path: str, out_path: str) -> None:
    with open(log_path) as f:
        log = json.load(f)["log"]
    vq = [r for r in log if r["phase"] == "vqvae"]
    var = [r for r in log if r["phase"] == "var"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot([r["step"] for r in vq], [r["rec_mse"] for r in vq], label="reconstruction MSE")
    axes[0].plot([r["step"] for r in vq], [r["vq"] for r in vq], label="VQ loss")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("VQVAE step (batch 32)")
    axes[0].legend()
    axes[1].plot([r["step"] for r in var], [r["ce"] for r in var], label="cross-entropy (smoothing 0.1)")
    ax2 = axes[1].twinx()
    ax2.plot([r["step"] for r in var], [r["token_acc"] for r in var], color="tab:orange", label="token accuracy")
    axes[1].set_xlabel("VAR step (batch 32)")
    axes[1].legend(loc="upper center")
    ax2.legend(loc="center right")
    fig.suptitle("stagevar-tiny-var training (examples/train_reference.py, seed 0)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
