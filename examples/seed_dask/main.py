# main.py
from mepa import DaskExecutor
from add import func


def main():
    # automatically uploads `add.py` to cluster
    with DaskExecutor('address to your cluster') as executor:
        executor.submit_and_gather(func, 1, 2)

if __name__ == '__main__':
    main()
