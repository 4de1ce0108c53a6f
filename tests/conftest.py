"""Shared fixtures: tiny diffusers models saved to disk and small synthetic image folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

# No test may reach the network (the hub is unreachable here and in CI): set before huggingface_hub is imported,
# which reads it once; otherwise each hub lookup waits for connection time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny_kl(sample_size: int = 32, latent_channels: int = 4, scaling_factor: float = 0.5, shift_factor: float | None = 0.1):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def tiny_taesd(sample_size: int = 32):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    vae.register_to_config(sample_size=sample_size)
    return vae


def _byte_level_vocabulary() -> list[str]:
    """The 256 byte characters of CLIP's byte-level BPE, each alone and ending a word, and its two special tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + n) for n in range(len(shifted))]
    return chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]


def tiny_stable_diffusion(folder: Path, text_encoder: bool = True, **unet_options) -> Path:
    """A Stable Diffusion 1.x style pipeline folder: vae/, a text-conditioned unet/, scheduler/, text_encoder/,
    tokenizer/ (a BPE tokenizer without merges: the tests only need the empty prompt)."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tiny_kl().save_pretrained(folder / "vae")
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                         norm_num_groups=8, **unet_options).save_pretrained(folder / "unet")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  skip_prk_steps=True).save_pretrained(folder / "scheduler")
    vocabulary = _byte_level_vocabulary()
    words = folder / "tokenizer"
    words.mkdir(parents=True)
    (words / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}))
    (words / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=16).save_pretrained(words)
    if text_encoder:
        end = len(vocabulary) - 1
        CLIPTextModel(CLIPTextConfig(vocab_size=len(vocabulary), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=16, bos_token_id=end - 1,
                                     eos_token_id=end, pad_token_id=end)).save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}))
    return folder


@pytest.fixture(scope="session")
def stable_diffusion_folder(tmp_path_factory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def kl_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-kl"
    tiny_kl().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def taesd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-taesd"
    tiny_taesd().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pipeline_folder(tmp_path_factory) -> Path:
    """A diffusers pipeline layout: model_index.json with the autoencoder in vae/."""
    folder = tmp_path_factory.mktemp("models") / "tiny-pipeline"
    tiny_kl().save_pretrained(folder / "vae")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def shape_image(rng: np.random.Generator, size=(40, 48), mode="RGB") -> Image.Image:
    """A random image with a few coloured shapes (structured, unlike noise)."""
    w, h = size
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        x1, y1 = x0 + int(rng.integers(3, w // 2 + 4)), y0 + int(rng.integers(3, h // 2 + 4))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img.convert(mode) if mode != "RGB" else img


def make_image_folder(folder: Path, n: int, seed: int = 0, classes=("a", "b"), fmt="png") -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / classes[i % len(classes)]
        sub.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(24, 64)), int(rng.integers(24, 64)))
        shape_image(rng, size).save(sub / f"img{i:04d}.{fmt}")
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", 24)


def write_test_map_and_scores(scope_path: Path, with_scores: bool = True) -> None:
    """A map (PCA of the latents; the dashboard only reads x, y) and a score per image, for dashboard tests."""
    import pandas as pd
    from sklearn.decomposition import PCA

    from latentscope.scope import Scope

    scope = Scope(scope_path)
    ok = scope.ok_manifest()
    flat = np.asarray(scope.latents(), np.float32).reshape(len(ok), -1)
    xy = PCA(n_components=2, random_state=0).fit_transform(flat)
    scope.write_map("default", pd.DataFrame({"id": ok["id"], "x": xy[:, 0], "y": xy[:, 1]}), {"method": "pca-for-tests"})
    if with_scores:
        score = np.linalg.norm(flat - flat.mean(0), axis=1)
        scope.write_scores("default", pd.DataFrame({"id": ok["id"], "score": score}), {"method": "norm-for-tests"})


@pytest.fixture(scope="session")
def explorer_scope(tmp_path_factory, kl_folder) -> Path:
    from latentscope.ingest import encode

    root = tmp_path_factory.mktemp("explorer")
    images = make_image_folder(root / "images", 40, classes=("cats", "dogs", "owls"))
    encode(images, kl_folder, root / "scope", progress=False, device="cpu")
    write_test_map_and_scores(root / "scope")
    return root / "scope"


def pytest_setup_options():
    """Headless Debian Chromium for dash.testing's browser fixtures (no network, no sandbox as root)."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = os.environ.get("LATENTSCOPE_CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--window-size=1500,950", "--hide-scrollbars"):
        options.add_argument(flag)
    return options  # pluggy gathers hook results into the list dash.testing expects


def latent_scope(path: Path, latents: np.ndarray, labels=None, paths=None) -> Path:
    """A scope holding given latents and no images (for map and dashboard tests at sizes encoding would make slow)."""
    import hashlib

    import pandas as pd

    from latentscope.scope import Scope

    scope = Scope.create(path, {"model": {"latent_shape": list(latents.shape[1:])}, "images_root": "images"})
    n = len(latents)
    labels = np.zeros(n, int) if labels is None else np.asarray(labels)
    half = latents.astype(np.float16)
    manifest = pd.DataFrame({
        "id": np.arange(n), "path": list(paths) if paths is not None else [f"{i}.png" for i in range(n)], "sha256": [hashlib.sha256(r.tobytes()).hexdigest() for r in half],
        "width": 32, "height": 32, "status": "ok", "error": "", "label": labels.astype(str), "row": np.arange(n),
    })
    np.save(path / "latents.npy.next.npy", half)
    os.replace(path / "latents.npy.next.npy", path / "latents.npy.next")
    scope.commit(manifest, path / "latents.npy.next")
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs shared by one test module (Ray takes seconds to start); yields its address."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield context.address_info["address"]
    ray.shutdown()
