import pandas as pd
import matplotlib.pyplot as plt
df = pd.DataFrame({"n": range(1, 11)})
df["square"] = df["n"] ** 2
print(df["square"].sum())
df.plot(x="n", y="square", marker="o", title="squares")
plt.savefig("squares.png")
