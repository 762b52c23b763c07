"""Retrieval-augmented generation: an in-memory vector store filled with the service's
embedding model, and one retrieval chain that answers from what it retrieved.

The embeddings come from the service's embedding model (all-MiniLM-L6-v2 locally, its engine
started by the first embeddings request); the answer from its chat model. Both read the URL
and key from VLLM_AUTOSCALE_URL / VLLM_AUTOSCALE_API_KEY.

    vllm-autoscale serve --local -- python examples/rag.py
"""

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_vllm_autoscale import ChatVLLMAutoscale, VLLMAutoscaleEmbeddings

CORPUS = {
    "eiffel": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "photosynthesis": "Photosynthesis lets plants turn sunlight, water and carbon dioxide "
    "into sugar and oxygen.",
    "everest": "Mount Everest, on the border of Nepal and China, is the highest mountain "
    "above sea level.",
    "python": "Python is a programming language created by Guido van Rossum, first "
    "released in 1991.",
    "moon": "Neil Armstrong and Buzz Aldrin walked on the Moon in July 1969 during Apollo 11.",
    "amazon": "The Amazon rainforest spans nine countries and holds the largest river by "
    "discharge.",
    "coffee": "Coffee beans are the roasted seeds of the Coffea plant, first brewed in Yemen.",
    "bees": "Honey bees communicate the direction of flowers with a waggle dance.",
    "jupiter": "Jupiter is the largest planet of the solar system, a gas giant with a "
    "Great Red Spot.",
    "chess": "In chess, castling moves the king two squares toward a rook.",
    "vaccines": "Edward Jenner developed the first smallpox vaccine in 1796 using cowpox.",
    "sahara": "The Sahara is the largest hot desert, covering much of North Africa.",
    "piano": "The piano was invented by Bartolomeo Cristofori in Italy around 1700.",
    "dna": "DNA is a double helix of nucleotides that carries genetic instructions.",
    "olympics": "The modern Olympic Games were first held in Athens in 1896.",
    "volcano": "Volcanoes erupt when molten rock called magma rises to the surface.",
    "penguins": "Emperor penguins breed in the Antarctic winter, the males keeping the egg "
    "warm on their feet.",
    "bread": "Bread dough rises because yeast ferments sugars and releases carbon dioxide.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon.",
    "internet": "The World Wide Web was invented by Tim Berners-Lee at CERN in 1989.",
}
QUESTIONS = {
    "Who created the Python programming language?": "python",
    "When did people first walk on the Moon?": "moon",
    "Why does bread dough rise?": "bread",
    "What causes the tides in the ocean?": "tides",
    "Which is the highest mountain in the world?": "everest",
}

embeddings = VLLMAutoscaleEmbeddings()  # the service's embedding model (its alias)
store = InMemoryVectorStore(embeddings)
retriever = store.as_retriever(search_kwargs={"k": 1})

llm = ChatVLLMAutoscale(temperature=0, max_tokens=48)
prompt = ChatPromptTemplate.from_messages([
    ("system", "Answer in one sentence, using only this context:\n{context}"),
    ("human", "{question}"),
])  # fmt: skip


def as_prompt(retrieved: dict) -> dict:
    """The retrieved documents as the prompt's context."""
    context = "\n".join(doc.page_content for doc in retrieved["context"])
    return {"context": context, "question": retrieved["question"]}


# One retrieval chain: retrieve, then answer from what was retrieved (both kept in the result).
chain = RunnableParallel(context=retriever, question=RunnablePassthrough()).assign(
    answer=as_prompt | prompt | llm | StrOutputParser()
)

if __name__ == "__main__":
    store.add_documents([Document(text, metadata={"topic": t}) for t, text in CORPUS.items()])
    right = 0
    for question, topic in QUESTIONS.items():
        result = chain.invoke(question)
        found = result["context"][0].metadata["topic"]
        right += found == topic
        print(f"Q: {question}\n  retrieved: {found}\n  answer: {result['answer'].strip()}")
    print(f"retrieved the right document for {right}/{len(QUESTIONS)} questions")
