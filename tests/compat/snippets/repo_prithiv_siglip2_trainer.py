# Source: GitHub repo PRITHIVSAKTHIUR/FineTuning-SigLIP-2,
#   Finetune-SigLIP2-Image-Classification/1.SigLIP2_Finetune_ImageClassification_TrainTest_Splits.ipynb
#   (SiglipForImageClassification on google/siglip2-base-patch16-224 with AutoImageProcessor's mean/std/size,
#   torchvision transforms, a collate_fn, TrainingArguments and the Trainer: evaluate, train, evaluate, predict)
# Edits: the notebook's cells as one script. Offline: MNIST from `datasets` is replaced by six of the served photos
#   with labels (a list-backed torch Dataset), `evaluate.load("accuracy")` by the same computation in numpy, and the
#   run is shortened (1 epoch, batch 2, no warmup, no saving or pushing). Updated for transformers 5 (the oracle):
#   `evaluation_strategy` -> `eval_strategy`, Trainer's `tokenizer=` -> `processing_class=`, `logging_dir` dropped.
# Requires: accelerate
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import Compose, Normalize, RandomAdjustSharpness, RandomRotation, Resize, ToTensor

from transformers import AutoImageProcessor, SiglipForImageClassification, Trainer, TrainingArguments
from transformers.image_utils import load_image

labels_list = ["cat", "not cat"]
label2id, id2label = {}, {}
for i, label in enumerate(labels_list):
    label2id[label] = i
    id2label[i] = label

urls = [f"http://images.cocodataset.org/val2017/{name}.jpg" for name in ("000000039769", "000000000285", "cat-1",
        "000000000776", "cat-2", "000000000001")]  # fmt: skip
examples = [{"image": load_image(url), "label": 0 if "cat" in url or "39769" in url else 1} for url in urls]

model_str = "google/siglip2-base-patch16-224"
processor = AutoImageProcessor.from_pretrained(model_str)
image_mean, image_std = processor.image_mean, processor.image_std
size = processor.size["height"]

_train_transforms = Compose([Resize((size, size)), RandomRotation(90), RandomAdjustSharpness(2), ToTensor(),
                             Normalize(mean=image_mean, std=image_std)])  # fmt: skip
_val_transforms = Compose([Resize((size, size)), ToTensor(), Normalize(mean=image_mean, std=image_std)])


class PhotoDataset(Dataset):
    def __init__(self, rows, transforms):
        self.rows, self.transforms = rows, transforms

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return {"pixel_values": self.transforms(row["image"].convert("RGB")), "label": row["label"]}


train_data = PhotoDataset(examples[:4], _train_transforms)
test_data = PhotoDataset(examples[4:], _val_transforms)


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


model = SiglipForImageClassification.from_pretrained(model_str, num_labels=len(labels_list))
model.config.id2label = id2label
model.config.label2id = label2id
trainable_millions = model.num_parameters(only_trainable=True) / 1e6


def compute_metrics(eval_pred):
    predicted_labels = eval_pred.predictions.argmax(axis=1)
    return {"accuracy": float(np.mean(predicted_labels == eval_pred.label_ids))}


args = TrainingArguments(
    output_dir="siglip2-image-classification/",
    eval_strategy="epoch",
    learning_rate=2e-4,
    per_device_train_batch_size=2,
    per_device_eval_batch_size=2,
    num_train_epochs=1,
    weight_decay=0.02,
    remove_unused_columns=False,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
)
trainer = Trainer(
    model,
    args,
    train_dataset=train_data,
    eval_dataset=test_data,
    data_collator=collate_fn,
    compute_metrics=compute_metrics,
    processing_class=processor,
)

before = trainer.evaluate()
train_result = trainer.train()
after = trainer.evaluate()
outputs = trainer.predict(test_data)
print(outputs.metrics)
y_pred = outputs.predictions.argmax(1)
