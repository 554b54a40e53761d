"""Client side of every method: one function per Flower message.

Each method module offers ``train(msg, model, data)`` and
``evaluate(msg, model, data)`` returning the reply Message. `model` is any
``torch.nn.Module`` with Conv/Linear layers (architecture only: weights come
from the message); `data` is a :class:`fedmask.data.datasets.ClientData`.
"""
