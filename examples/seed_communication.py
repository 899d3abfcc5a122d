from time import sleep
import tqdm
from mepa import ProcessExecutor


class SomeTask:
    def __init__(self, task_length):
        self.task_length = task_length

    def do(self, ctx):
        for i in range(self.task_length):
            sleep(0.5)
            ctx.fire(1)

def main():
    n_tasks = 2
    task_length = 10

    progress = tqdm.tqdm(total=n_tasks * task_length)
    
    with ProcessExecutor(4) as executor:
        task = SomeTask(task_length)  # tasks that takes some time
        ctx = executor.register(lambda t: progress.update(t))  # register communication context
        executor.gather([executor.submit(task.do, ctx) for _ in range(n_tasks)])

if __name__ == '__main__':
    main()
