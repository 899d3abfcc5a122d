# add.py
def func(a, b):
    return a + b
