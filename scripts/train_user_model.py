"""Train a MobileNetV3 the way a user does in a notebook: plain torchvision and PyTorch, nothing of this tool.

    .venv/bin/python scripts/train_user_model.py --data photos --arch large --width 0.75 --image-size 64 \
        --epochs 10 --out model.pth [--plain]

``--data`` holds train/<class>/*.jpg (torchvision's ImageFolder layout; its classes in name order). The
checkpoint is ``{"state_dict": ..., "classes": [...], "mean": [...], "std": [...]}``, or with ``--plain``
the bare state_dict, as many notebooks save it. It stands in for the model.pth a user brings, so that
``udacisense init --model model.pth --data photos`` can be tried end to end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

# Normalised with ImageNet's statistics, as most notebooks do; a study must normalise the same way.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/<class>/ images")
    parser.add_argument("--arch", choices=("small", "large"), default="small")
    parser.add_argument("--width", type=float, default=1.0, help="torchvision's width_mult")
    parser.add_argument("--image-size", type=int, default=32, help="images are resized to this many pixels square")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("model.pth"))
    parser.add_argument("--plain", action="store_true", help="save the bare state_dict, without class names")
    return parser.parse_args()


def train(model: nn.Module, loader: torch.utils.data.DataLoader, epochs: int, lr: float) -> None:
    """SGD with a one-cycle schedule and label smoothing: a common notebook recipe."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, epochs * len(loader)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(epochs):
        model.train()
        total, correct, running = 0, 0, 0.0
        for images, labels in loader:
            logits = model(images)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            total += len(labels)
        print(f"epoch {epoch + 1}/{epochs}: loss {running / total:.3f}, train accuracy {correct / total:.3f}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    preprocess = transforms.Compose([
        transforms.Resize((args.image_size, args.image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(args.data / "train"), transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    builder = torchvision.models.mobilenet_v3_small if args.arch == "small" else torchvision.models.mobilenet_v3_large
    model = builder(num_classes=len(dataset.classes), width_mult=args.width)
    train(model, loader, args.epochs, args.lr)
    model.eval()
    state = model.state_dict()
    torch.save(state if args.plain else {"state_dict": state, "classes": dataset.classes, "mean": list(MEAN), "std": list(STD)},
               args.out)
    print(f"saved {args.out} ({len(dataset.classes)} classes: {', '.join(dataset.classes)})")


if __name__ == "__main__":
    main()
