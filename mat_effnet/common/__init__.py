"""What every layer shares: the base exception and argument checks, atomic writes,
faults of the machine, a quiet TensorFlow start-up, the progress line, the CLI
wrapper and the absl flags derived from dataclasses.

May import: nothing of this project. The bottom room.
"""
