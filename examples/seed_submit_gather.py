from mepa import ProcessExecutor

def func_add(a, b):
    return a + b


def func_mul(a, b):
    return a * b


def func_div(a, b):
    return a / b


def main():
    with ProcessExecutor(3) as executor:
        futures = {
            'add': executor.submit(func_add, 2, 1),
            'mul': executor.submit(func_mul, 2, 1),
            'div': executor.submit(func_div, 2, 1),
        }
        print(executor.gather(futures))

if __name__ == '__main__':
    main()
