"""train: DPO with a LoRA adapter (TRL DPOTrainer + PEFT) on a round's pairs.

    rlaif train --config configs/quickstart.yaml [--resume]
"""
