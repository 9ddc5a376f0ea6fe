"""Train GIF's default image encoder: a small CNN mapped into the frozen text encoder's space.

    python scripts/train_image_tower.py [--minutes 12] [--out assets/image_tower.safetensors]

Data: real image–caption pairs from Debian packages (see ``gif_core/image_data.py``):
Tux Paint stamps (English descriptions), openclipart-png (file-name titles and folders) and a
3,000-photo slice of Fashion-MNIST (class names). Pairs whose id falls in the held-out share
(:func:`gif_core.image_data.is_held_out`) are never trained on and give the retrieval metrics.

Objective: CLIP's symmetric contrastive loss between the tower's image embeddings and the
frozen MiniLM embeddings of the captions (the text side is not trained), with a learnt
temperature; captions shared by several images in a batch (Fashion-MNIST's ten classes) count
as positives of each other. Every image is seen through random crops, small rotations, noise,
blur and brightness changes, so that perturbed copies of one picture land close together.

Output: fp16 safetensors weights and a JSON report (settings, data counts, held-out metrics)
beside them, used for ``assets/image_tower.md``. The held-out metrics are measured twice: on the
72-px training arrays right after training, and (``inference_path``, the figures of the model
card) through :class:`gif_core.encoders.ImageEncoder` on freshly decoded files, exactly as an
index build sees them; ``--evaluate-only`` recomputes the latter for existing weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gif_core.encoders import TOWER_SIDE, ImageTower, TextEncoder, file_sha256, square_on_white
from gif_core.image_data import (
    fashion_mnist_corpus,
    is_held_out,
    openclipart_corpus,
    stamps_corpus,
)
from gif_core.images import ImageError, decode_image

log = logging.getLogger("train_image_tower")

BASE_SIDE = 72
"""Training images are stored at this side; random crops and rotations resample them to 64."""
FASHION_SLICE = 3000


def load_pairs(cache: Path) -> dict[str, np.ndarray]:
    """Decode every pair once into a (N, 72, 72, 3) uint8 array (cached in ``cache``)."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    corpora = [stamps_corpus(), openclipart_corpus(), fashion_mnist_corpus(FASHION_SLICE)]
    pixels, captions, ids = [], [], []
    skipped = 0
    t0 = time.time()
    for corpus in corpora:
        for i, src in enumerate(corpus.sources):
            try:
                img = decode_image(src.read(), where=src.id, max_side=2 * BASE_SIDE).image
            except ImageError as exc:
                skipped += 1
                log.info("skip %s: %s", src.id, exc.reason)
                continue
            pixels.append(np.asarray(square_on_white(img, BASE_SIDE), dtype=np.uint8))
            captions.append(src.caption)
            ids.append(src.id)
            if i % 1000 == 0:
                log.info("decoded %d images (%.0fs)", len(ids), time.time() - t0)
    out = {"pixels": np.stack(pixels), "captions": np.array(captions), "ids": np.array(ids),
           "skipped": np.array(skipped)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, 72, 72) in [-1, 1] -> (B, 3, 64, 64): crop/zoom, rotation, blur, noise, light."""
    B = x.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(B, generator=gen)

    plain = torch.rand(B, generator=gen) < 0.2
    scale = torch.where(plain, torch.ones(B), u(0.75, 1.0))
    angle = torch.where(plain, torch.zeros(B), u(-12, 12) * math.pi / 180)
    tx = (1 - scale) * u(-1, 1)
    ty = (1 - scale) * u(-1, 1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (B, 3, TOWER_SIDE, TOWER_SIDE), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # blur: down and up again, a stand-in for resizing and JPEG
    blur = (torch.rand(B, generator=gen) < 0.3).view(B, 1, 1, 1)
    small = F.interpolate(y, scale_factor=0.5, mode="bilinear", antialias=True)
    y = torch.where(blur, F.interpolate(small, size=TOWER_SIDE, mode="bilinear"), y)
    gain = u(0.85, 1.15).view(B, 1, 1, 1)
    bias = u(-0.1, 0.1).view(B, 1, 1, 1)
    sigma = (u(0, 0.08) * (torch.rand(B, generator=gen) < 0.5)).view(B, 1, 1, 1)
    y = y * gain + bias + sigma * torch.randn(y.shape, generator=gen)
    return y.clamp(-1, 1)


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    """Held-out text→image recall@1/5/10 and image→text recall@1 (unit rows, pair i ↔ i)."""
    sim = txt @ img.T  # (n, n): caption i against image j
    ranks = (sim > sim.diag().unsqueeze(1)).sum(1)  # images scored above the true one
    ranks_i = (sim.T > sim.diag().unsqueeze(1)).sum(1)
    return {"n": int(len(img)),
            "text_to_image_r@1": float((ranks < 1).float().mean()),
            "text_to_image_r@5": float((ranks < 5).float().mean()),
            "text_to_image_r@10": float((ranks < 10).float().mean()),
            "image_to_text_r@1": float((ranks_i < 1).float().mean()),
            "mean_pair_cosine": float(sim.diag().mean())}


def embed_eval(tower: ImageTower, pixels: np.ndarray) -> torch.Tensor:
    """Embed stored 72-px images the way inference does (whole image at 64 px)."""
    from PIL import Image

    tower.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(pixels), 512):
            batch = [Image.fromarray(p).resize((TOWER_SIDE, TOWER_SIDE), Image.Resampling.BILINEAR)
                     for p in pixels[start:start + 512]]
            x = torch.from_numpy(np.stack([np.asarray(b) for b in batch])).permute(0, 3, 1, 2)
            out.append(F.normalize(tower(x.float() / 127.5 - 1.0), dim=-1))
    tower.train()
    return torch.cat(out)


def evaluate(weights: Path) -> dict[str, dict[str, float]]:
    """Held-out retrieval metrics of saved weights through the inference path users get
    (:class:`gif_core.encoders.ImageEncoder` on freshly decoded images)."""
    from gif_core.config import EncoderConfig
    from gif_core.encoders import ImageEncoder

    enc = ImageEncoder(EncoderConfig(name=str(weights), device="cpu"))
    out = {}
    for name, corpus in (("stamps", stamps_corpus()), ("openclipart", openclipart_corpus())):
        images, captions = [], []
        for src in corpus.sources:
            if not is_held_out(src.id):
                continue
            try:
                images.append(decode_image(src.read(), where=src.id).image)
            except ImageError:
                continue
            captions.append(src.caption)
        img = torch.from_numpy(enc.encode_images(images))
        txt = torch.from_numpy(enc.encode(captions))
        out[f"held_out_{name}"] = retrieval_metrics(img, txt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/image_tower.safetensors")
    ap.add_argument("--cache", default=str(Path.home() / ".cache/gif/tower_pairs.npz"))
    ap.add_argument("--minutes", type=float, default=12.0, help="wall-clock training budget")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20, help="steps of linear learning-rate warmup")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="recompute the held-out metrics of --out through the inference path and "
                         "update its JSON report")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.evaluate_only:
        out = Path(args.out)
        report_path = out.with_suffix(".json")
        report = json.loads(report_path.read_text())
        report["metrics"]["inference_path"] = evaluate(out)
        report_path.write_text(json.dumps(report, indent=2))
        log.info("inference-path metrics: %s", report["metrics"]["inference_path"])
        return
    torch.manual_seed(args.seed)

    data = load_pairs(Path(args.cache))
    ids, captions = data["ids"].tolist(), data["captions"].tolist()
    held = np.array([is_held_out(i) and not i.startswith("fashion-mnist/") for i in ids])
    train_idx = np.flatnonzero(~held)
    test_idx = np.flatnonzero(held)
    log.info("%d pairs (%d skipped at decoding): %d train, %d held out", len(ids),
             int(data["skipped"]), len(train_idx), len(test_idx))

    uniq, cap_id = np.unique(np.array(captions), return_inverse=True)
    emb_cache = Path(args.cache).with_suffix(".captions.npy")
    if emb_cache.is_file() and len(np.load(emb_cache)) == len(uniq):
        t_emb = torch.from_numpy(np.load(emb_cache))
    else:
        t_emb = torch.from_numpy(TextEncoder().encode(uniq.tolist()))  # (U, d) unit rows
        np.save(emb_cache, t_emb.numpy())
    pixels = torch.from_numpy(data["pixels"]).permute(0, 3, 1, 2)  # (N, 3, 72, 72) uint8
    cap_id_t = torch.from_numpy(cap_id)

    tower = ImageTower(dim=t_emb.shape[1])
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [{"params": [p for n, p in tower.named_parameters() if p.ndim > 1],
               "weight_decay": args.weight_decay},
              {"params": [p for n, p in tower.named_parameters() if p.ndim <= 1]
               + [logit_scale], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    t0 = time.time()
    step, seen, epoch = 0, 0, 0
    losses = []
    while time.time() - t0 < budget:
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        for start in range(0, len(perm) - args.batch + 1, args.batch):
            frac = min(1.0, (time.time() - t0) / budget)
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.from_numpy(perm[start:start + args.batch])
            x = augment(pixels[idx].float() / 127.5 - 1.0, gen)
            z = F.normalize(tower(x), dim=-1)  # (B, d)
            cid = cap_id_t[idx]
            t = t_emb[cid]  # (B, d)
            logits = logit_scale.exp().clamp(max=100) * z @ t.T  # (B, B)
            same = (cid.unsqueeze(0) == cid.unsqueeze(1)).float()
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean()
                          - (target * logits.log_softmax(0)).sum(0).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            seen += len(idx)
            if step % 20 == 0:
                log.info("epoch %d step %d loss %.3f scale %.1f lr %.2e %.0f img/s", epoch, step,
                         np.mean(losses[-20:]), float(logit_scale.exp()), lr,
                         seen / (time.time() - t0))
            if time.time() - t0 >= budget:
                break
        epoch += 1
    train_s = time.time() - t0
    tower.eval()

    held_ids = [ids[i] for i in test_idx]
    img = embed_eval(tower, data["pixels"][test_idx])
    txt = t_emb[cap_id[test_idx]]
    metrics = {"held_out": retrieval_metrics(img, txt)}
    stamps = [j for j, i in enumerate(held_ids) if i.startswith("stamps/")]
    metrics["held_out_stamps"] = retrieval_metrics(img[stamps], txt[stamps])
    tr = train_idx[:1000]
    metrics["train_slice"] = retrieval_metrics(embed_eval(tower, data["pixels"][tr]),
                                               t_emb[cap_id[tr]])
    log.info("held-out metrics: %s", metrics)

    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in tower.state_dict().items()}
    save_file(state, str(out))
    report = {"weights": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size,
              "parameters": sum(p.numel() for p in tower.parameters()),
              "pairs": {"total": len(ids), "train": len(train_idx), "held_out": len(test_idx),
                        "skipped_at_decoding": int(data["skipped"]),
                        "stamps": sum(i.startswith("stamps/") for i in ids),
                        "openclipart": sum(i.startswith("openclipart/") for i in ids),
                        "fashion_mnist": sum(i.startswith("fashion-mnist/") for i in ids)},
              "settings": {"minutes": args.minutes, "batch": args.batch, "lr": args.lr,
                           "weight_decay": args.weight_decay, "seed": args.seed,
                           "warmup": args.warmup, "threads": args.threads, "steps": step,
                           "epochs": epoch,
                           "train_seconds": round(train_s, 1),
                           "final_loss": float(np.mean(losses[-50:])),
                           "temperature": float(1 / logit_scale.exp())},
              "metrics": metrics}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    report["metrics"]["inference_path"] = evaluate(out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    log.info("wrote %s (%d bytes, sha256 %s); inference-path metrics %s", out, report["bytes"],
             report["sha256"], report["metrics"]["inference_path"])


if __name__ == "__main__":
    main()
