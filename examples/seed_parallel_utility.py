import numpy as np
from time import sleep
from mepa import ProcessExecutor


with ProcessExecutor(4) as executor:
    progress = executor.progress()

    def task(some_data):
        ret = []
        for d in progress.iters(some_data):
            ret.append(d + 1)
            sleep(1)
        return np.asarray(ret)

    data = np.arange(20)

    # shuffle and allocates data according to executor's workers
    alloc = executor.arrange(data, shuffle=True)

    # distribute data to all workers
    tasks = executor.distribute(task, alloc)

    # for output that corresponds to input element-wisely
    # gather and assemble results
    result = alloc.reassemble(executor.gather(tasks))

    assert np.array_equal(result, data + 1)
